"""Tolerated deviations (wire.Deviation): EMMG<=>MUX v1 messages carrying data_id.

Strict decoding (the default) refuses data_id in v1 as TS 103 197 says; with
``tolerate={Deviation.V1_DATA_ID}`` exactly that one departure decodes, and the message says so.
"""

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcast_sp4 import wire
from bcast_sp4.wire import Deviation, emmg_mux as M
from bcast_sp4.wire import ecmg_scs as E
from bcast_sp4.wire.message import TLV

from .strategies import messages

TOLERANT = frozenset({Deviation.V1_DATA_ID})
CLIENT = 0x00010001


def as_v1(message) -> bytes:
    """The v2 encoding of *message* with its version byte set to 1 (what the deviant EMMG sends)."""
    frame = bytearray(message.encode())
    frame[0] = 1
    return bytes(frame)


def add_parameter(frame: bytes, code: int, value: bytes) -> bytes:
    body = frame[5:] + TLV.pack(code, len(value)) + value
    return frame[:3] + len(body).to_bytes(2, "big") + body


SETUP = M.StreamSetup(protocol_version=2, client_id=CLIENT, data_channel_id=1, data_stream_id=2, data_id=7, data_type=0)
STATUS = M.StreamStatus(protocol_version=2, client_id=CLIENT, data_channel_id=1, data_stream_id=2, data_id=7, data_type=0)
PROVISION = M.DataProvision(
    protocol_version=2, client_id=CLIENT, data_channel_id=1, data_stream_id=2, data_id=7, datagram=(b"\x01\x02",)
)


@pytest.mark.parametrize("message", [SETUP, STATUS, PROVISION], ids=lambda m: m.NAME)
def test_strict_decode_refuses_data_id_in_v1(message):
    with pytest.raises(wire.UnknownParameterType) as info:
        wire.decode(as_v1(message))
    err = info.value
    assert err.error_status == 0x000A and err.error_information == 0x0008
    assert (err.interface, err.protocol_version, err.client_id, err.channel_id) == (wire.Interface.EMMG_MUX, 1, CLIENT, 1)


@pytest.mark.parametrize("message", [SETUP, STATUS, PROVISION], ids=lambda m: m.NAME)
def test_tolerant_decode_reads_data_id_and_names_the_deviation(message):
    decoded = wire.decode(as_v1(message), wire.Interface.EMMG_MUX, tolerate=TOLERANT)
    assert decoded == attrs.evolve(message, protocol_version=1)
    assert decoded.data_id == 7 and decoded.protocol_version == 1
    assert decoded.deviations == TOLERANT
    assert "v1 has no data_id" in Deviation.V1_DATA_ID.description


def test_compliant_messages_decode_without_deviations_in_tolerant_mode():
    v1 = M.DataProvision(protocol_version=1, client_id=CLIENT, data_channel_id=1, data_stream_id=2, datagram=(b"\x01",))
    for message in (v1, PROVISION, SETUP):
        decoded = wire.decode(message.encode(), tolerate=TOLERANT)
        assert decoded == message and decoded.deviations == frozenset()
    built = M.ChannelTest(client_id=CLIENT, data_channel_id=1)
    assert built.deviations == frozenset()  # never decoded at all


def test_udp_datagram_tolerates_too():
    decoded = wire.decode_datagram(as_v1(PROVISION), tolerate=TOLERANT)
    assert decoded.deviations == TOLERANT
    with pytest.raises(wire.UnknownParameterType):
        wire.decode_datagram(as_v1(PROVISION))


def test_data_id_twice_stays_a_cardinality_error():
    frame = add_parameter(as_v1(PROVISION), 0x0008, b"\x00\x09")
    with pytest.raises(wire.WrongParameterCount) as info:
        wire.decode(frame, tolerate=TOLERANT)
    assert info.value.error_information == 0x0008 and info.value.error_status == 0x000C
    assert info.value.interface is wire.Interface.EMMG_MUX and info.value.client_id == CLIENT


def test_other_violations_beside_data_id_stay_errors():
    # v1 data_provision needs data_channel_id: dropping it is an error whether data_id is tolerated or not
    no_channel = M.DataProvision(protocol_version=2, client_id=CLIENT, data_stream_id=2, data_id=7, datagram=(b"\x01",))
    with pytest.raises(wire.MissingParameter) as info:
        wire.decode(as_v1(no_channel), tolerate=TOLERANT)
    assert info.value.error_information == 0x0003
    # a parameter that v1 and v2 both forbid in data_provision (bandwidth, 0x0006)
    with pytest.raises(wire.UnknownParameterType) as info:
        wire.decode(add_parameter(as_v1(PROVISION), 0x0006, b"\x00\x01"), tolerate=TOLERANT)
    assert info.value.error_information == 0x0006


def test_only_emmg_mux_data_id_is_relaxed():
    # ECMG<=>SCS v1 stream_setup with ECM_id stays an error in tolerant mode
    v2 = E.StreamSetup(protocol_version=2, ECM_channel_id=1, ECM_stream_id=1, ECM_id=5, nominal_CP_duration=10)
    with pytest.raises(wire.UnknownParameterType):
        wire.decode(as_v1(v2), tolerate=TOLERANT)
    relaxed = {cls.NAME for cls in wire.MESSAGE_CLASSES.values() if cls._RELAXED}
    assert relaxed == {"stream_setup", "stream_status", "data_provision"}
    assert all(cls.INTERFACE is wire.Interface.EMMG_MUX for cls in wire.MESSAGE_CLASSES.values() if cls._RELAXED)


@settings(max_examples=150, deadline=None)
@given(messages(classes=[M.StreamSetup, M.StreamStatus, M.DataProvision]), st.data())
def test_any_v2_message_sent_as_v1_decodes_tolerantly_or_fails_as_v1_would(message, data):
    """Sent with version byte 1, a v2 message decodes tolerantly exactly when it also meets v1's
    other rules (data_channel_id and data_stream_id present); otherwise the v1 error is raised."""
    if message.protocol_version == 1:
        message = attrs.evolve(message, protocol_version=2, data_id=data.draw(st.integers(0, 0xFFFF)))
        if isinstance(message, M.DataProvision) and message.data_channel_id is None:
            message = attrs.evolve(message, data_channel_id=1)
    frame = as_v1(message)
    v1_ok = message.data_channel_id is not None and message.data_stream_id is not None
    if v1_ok:
        decoded = wire.decode(frame, tolerate=TOLERANT)
        assert decoded == attrs.evolve(message, protocol_version=1) and decoded.deviations == TOLERANT
    else:
        with pytest.raises(wire.MissingParameter):
            wire.decode(frame, tolerate=TOLERANT)
    with pytest.raises(wire.PeerProtocolError):
        wire.decode(frame)
