"""Property tests: round trips for every message and version; bad input only ever raises the
codec's typed error, with the error_status the spec assigns (digest simulcrypt.md §5.4)."""

import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bcast_sp4 import wire
from bcast_sp4.wire.message import ABSENT, ONE, SOME, VERSION_GROUPS

from .strategies import ALL_CLASSES, messages

ECMG, EMMG = wire.Interface.ECMG_SCS, wire.Interface.EMMG_MUX
CODES = {
    # kind: (ECMG<=>SCS code, EMMG<=>MUX code)
    wire.InvalidMessage: (0x0001, 0x0001),
    wire.UnsupportedVersion: (0x0002, 0x0002),
    wire.UnknownMessageType: (0x0003, 0x0003),
    wire.MessageTooLong: (0x0004, 0x0004),
    wire.UnknownParameterType: (0x000E, 0x000A),
    wire.InconsistentLength: (0x000F, 0x000B),
    wire.MissingParameter: (0x0010, 0x000C),
    wire.InvalidValue: (0x0011, 0x000D),
}
settings.register_profile("ci", max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


def expected_code(kind, interface):
    base = next(k for k in kind.__mro__ if k in CODES)  # WrongParameterCount -> MissingParameter
    return CODES[base][0 if interface is ECMG else 1]


def tlvs(frame):
    """Split a valid frame into its parameter TLVs (type, raw TLV bytes)."""
    out, pos = [], 5
    while pos < len(frame):
        ptype, plen = struct.unpack_from(">HH", frame, pos)
        out.append((ptype, frame[pos : pos + 4 + plen]))
        pos += 4 + plen
    return out


def rebuild(frame, parts):
    body = b"".join(parts)
    return frame[:3] + struct.pack(">H", len(body)) + body


def assert_error(frame, kind, interface):
    with pytest.raises(wire.PeerProtocolError) as info:
        wire.decode(frame, interface)
    assert isinstance(info.value, kind), info.value
    assert info.value.error_status == expected_code(kind, interface)
    return info.value


@given(messages())
def test_round_trip_every_message_and_version(message):
    frame = message.encode()
    assert wire.decode(frame) == message
    assert wire.decode(frame, message.INTERFACE) == message
    assert wire.decode(frame).encode() == frame


@given(messages(), st.data())
def test_framer_reassembles_any_chunking(message, data):
    frames = [message.encode(), wire.ecmg_scs.ChannelTest(ECM_channel_id=7).encode(), message.encode()]
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = wire.Framer()
    got = []
    for start, end in zip([0] + cuts, cuts + [len(stream)]):
        got += framer.feed(stream[start:end])
    assert got == frames
    assert framer.buffered == 0


@given(st.binary(max_size=300), st.sampled_from([None, ECMG, EMMG]))
def test_random_bytes_only_raise_typed_errors(data, interface):
    try:
        message = wire.decode(data, interface)
    except wire.PeerProtocolError as exc:
        assert exc.error_status in {code for pair in CODES.values() for code in pair}
    else:  # random bytes can form a valid message: then it must survive a round trip
        assert wire.decode(message.encode()) == message


@given(st.binary(max_size=400), st.integers(5, 80))
def test_random_stream_through_framer_only_raises_typed_errors(data, max_length):
    framer = wire.Framer(max_length=max_length)
    for item in framer.feed(data):
        if isinstance(item, wire.MessageTooLong):
            assert item.error_status == 0x0004
            continue
        assert len(item) <= max_length
        try:
            wire.decode(item)
        except wire.PeerProtocolError:
            pass
    assert framer.buffered < max_length


@given(messages(), st.data())
def test_truncated_message_is_invalid_message(message, data):
    frame = message.encode()
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert_error(frame[:cut], wire.InvalidMessage, message.INTERFACE)
    # a stream framer holds the partial message back instead
    assert wire.Framer().feed(frame[:cut]) == []


@given(messages(), st.data())
def test_bit_flips_only_raise_typed_errors(message, data):
    frame = bytearray(message.encode())
    for _ in range(data.draw(st.integers(1, 3))):
        bit = data.draw(st.integers(0, len(frame) * 8 - 1))
        frame[bit // 8] ^= 1 << (bit % 8)
    try:
        decoded = wire.decode(bytes(frame), message.INTERFACE)
    except wire.PeerProtocolError as exc:
        assert exc.interface is message.INTERFACE or isinstance(exc, wire.UnknownMessageType)
        assert exc.error_status in {code for pair in CODES.values() for code in pair}
    else:
        assert decoded.encode() == bytes(frame) or wire.decode(decoded.encode()) == decoded


@given(messages(), st.integers(-40, 40).filter(bool))
def test_lying_message_length_is_invalid_message(message, delta):
    frame = message.encode()
    length = struct.unpack_from(">H", frame, 3)[0] + delta
    assume(0 <= length <= 0xFFFF)
    liar = frame[:3] + struct.pack(">H", length) + frame[5:]
    assert_error(liar, wire.InvalidMessage, message.INTERFACE)


@given(messages(), st.data())
def test_lying_parameter_length(message, data):
    frame = message.encode()
    parts = tlvs(frame)
    assume(parts)
    index = data.draw(st.integers(0, len(parts) - 1))
    ptype, raw = parts[index]
    plen = struct.unpack_from(">H", raw, 2)[0]
    new_len = data.draw(st.integers(0, 0xFFFF).filter(lambda n: n != plen))
    parts_raw = [r for _, r in parts]
    parts_raw[index] = raw[:2] + struct.pack(">H", new_len) + raw[4:]
    liar = rebuild(frame, parts_raw)
    with pytest.raises(wire.PeerProtocolError) as info:
        wire.decode(liar, message.INTERFACE)
    # overrunning the message is a framing fault; anything else is the parameter's length
    # (or, when the shorter value lets a later TLV be read from the middle, whatever that is)
    available = sum(len(r) for r in parts_raw[index:]) - 4  # value bytes left after this TLV header
    if new_len > available:
        assert isinstance(info.value, wire.InvalidMessage)
    elif table_of(message)[ptype].fixed_size is not None:
        assert isinstance(info.value, wire.InconsistentLength)
    assert info.value.error_status in {code for pair in CODES.values() for code in pair}


@given(messages(), st.data())
def test_fixed_size_parameter_with_wrong_length_is_inconsistent_length(message, data):
    frame = message.encode()
    parts = tlvs(frame)
    table = {p.code: p for p, _cards in type(message).PARAMS}
    fixed = [i for i, (ptype, _raw) in enumerate(parts) if table[ptype].fixed_size is not None]
    assume(fixed)
    index = data.draw(st.sampled_from(fixed))
    ptype, raw = parts[index]
    size = table[ptype].fixed_size
    new_size = data.draw(st.integers(0, 8).filter(lambda n: n != size))
    value = (raw[4:] * 8)[:new_size]
    raws = [r for _, r in parts]
    raws[index] = struct.pack(">HH", ptype, new_size) + value
    error = assert_error(rebuild(frame, raws), wire.InconsistentLength, message.INTERFACE)
    assert error.error_information == ptype


@given(messages(), st.data())
def test_duplicated_single_parameter_is_wrong_count(message, data):
    frame = message.encode()
    parts = tlvs(frame)
    table = {p.code: cards for p, cards in type(message).PARAMS}
    group = VERSION_GROUPS[message.INTERFACE][message.protocol_version]
    single = [i for i, (ptype, _raw) in enumerate(parts) if not table[ptype][group].repeated]
    assume(single)
    index = data.draw(st.sampled_from(single))
    raws = [r for _, r in parts]
    raws.insert(data.draw(st.integers(0, len(raws))), raws[index])
    error = assert_error(rebuild(frame, raws), wire.WrongParameterCount, message.INTERFACE)
    assert error.error_information == parts[index][0]


@given(messages(), st.data())
def test_missing_mandatory_parameter(message, data):
    frame = message.encode()
    parts = tlvs(frame)
    table = {p.code: cards for p, cards in type(message).PARAMS}
    group = VERSION_GROUPS[message.INTERFACE][message.protocol_version]
    mandatory = {p for p, cards in table.items() if cards[group] in (ONE, SOME)}
    ptype = data.draw(st.sampled_from(sorted(mandatory)))
    raws = [r for t, r in parts if t != ptype]
    error = assert_error(rebuild(frame, raws), wire.MissingParameter, message.INTERFACE)
    assert error.error_information == ptype


@given(messages(), st.integers(0, 0xFFFF), st.binary(max_size=6))
def test_parameter_not_in_message_is_unknown_parameter_type(message, ptype, value):
    table = {p.code: cards for p, cards in type(message).PARAMS}
    group = VERSION_GROUPS[message.INTERFACE][message.protocol_version]
    assume(ptype not in table or table[ptype][group] is ABSENT)
    frame = message.encode()
    raws = [r for _, r in tlvs(frame)] + [struct.pack(">HH", ptype, len(value)) + value]
    error = assert_error(rebuild(frame, raws), wire.UnknownParameterType, message.INTERFACE)
    assert error.error_information == ptype


@given(messages(), st.integers(0, 0xFF))
def test_wrong_version(message, version):
    frame = bytes([version]) + message.encode()[1:]
    if version not in VERSION_GROUPS[message.INTERFACE]:
        error = assert_error(frame, wire.UnsupportedVersion, message.INTERFACE)
        assert error.protocol_version == version
    else:  # another known version: decodes, or fails on that version's cardinality rules
        try:
            assert wire.decode(frame).protocol_version == version
        except (wire.MissingParameter, wire.UnknownParameterType, wire.InconsistentLength) as exc:
            assert exc.interface is message.INTERFACE


@given(messages(), st.integers(0, 0xFFFF))
def test_unknown_message_type(message, message_type):
    known = {c.MESSAGE_TYPE for c in ALL_CLASSES if c.INTERFACE is message.INTERFACE}
    assume(message_type not in known)
    frame = message.encode()
    frame = frame[:1] + struct.pack(">H", message_type) + frame[3:]
    assert_error(frame, wire.UnknownMessageType, message.INTERFACE)


@given(messages())
def test_errors_carry_channel_and_stream_ids(message):
    fields = attrs_fields(message)
    frame = message.encode()
    broken = frame + struct.pack(">HH", 0x7ABC, 0)  # unknown parameter appended
    broken = broken[:3] + struct.pack(">H", len(broken) - 5) + broken[5:]
    with pytest.raises(wire.PeerProtocolError) as info:
        wire.decode(broken)
    if message.INTERFACE is ECMG:
        assert info.value.channel_id == fields.get("ECM_channel_id")
        assert info.value.stream_id == fields.get("ECM_stream_id")
    else:
        assert info.value.client_id == fields.get("client_id")
        assert info.value.channel_id == fields.get("data_channel_id")
        assert info.value.stream_id == fields.get("data_stream_id")


def table_of(message):
    return {p.code: p for p, _cards in type(message).PARAMS}


def attrs_fields(message):
    import attrs

    return attrs.asdict(message, recurse=False)


def test_every_message_type_has_a_strategy():
    assert len(ALL_CLASSES) == 13 + 14
    assert {c.INTERFACE for c in ALL_CLASSES} == {ECMG, EMMG}
