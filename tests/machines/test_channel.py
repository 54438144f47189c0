"""The shared channel layer: error tables, reply builders, invalid counting, the server channel's checks.

The server channel is driven through a minimal EMMG<=>MUX server written here (one route-less
channel with streams), so each shared check is seen without a role's rules around it; the ECMG
and MUX machine tests cover the same checks inside the real roles.
"""

from __future__ import annotations

import attrs
import pytest

from bcast_sp4 import wire
from bcast_sp4.machines.channel import (
    CHANNEL_INTERFACES,
    ECMG_SCS_CHANNEL,
    EMMG_MUX_CHANNEL,
    MESSAGE_TYPE_OFFSET,
    PROTOCOL_VERSION_OFFSET,
    InvalidCounting,
    ServerChannel,
    ServerChannelState,
    ecmg_scs_channel_error,
    ecmg_scs_stream_error,
    emmg_mux_channel_error,
    emmg_mux_stream_error,
    error_information,
    peer_error_fields,
    reply_version,
)
from bcast_sp4.machines.outputs import Close, Notify, Send
from bcast_sp4.wire import ecmg_scs, emmg_mux
from bcast_sp4.wire.errors import ECMG_SCS_ERRORS, EMMG_MUX_ERRORS, ECMGSCSErrorStatus, EMMGMUXErrorStatus
from tests.doubles import cyclic_gc_off, error_of, notices, one, sent

CLIENT, OTHER = 0x00010001, 0x00010002


# -- the error tables ------------------------------------------------------------------------


def test_error_tables_hold_every_spec_code_with_its_name():
    assert len(ECMGSCSErrorStatus) == 23 and len(EMMGMUXErrorStatus) == 22
    assert ECMG_SCS_ERRORS[0x0013] == "ECM_channel_id value already in use"
    assert EMMG_MUX_ERRORS[0x000F] == "exceeded bandwidth"
    assert ECMGSCSErrorStatus.UNKNOWN_ECM_STREAM_ID == 0x0007 and EMMGMUXErrorStatus.UNKNOWN_DATA_STREAM_ID == 0x0005
    assert wire.error_name(wire.Interface.ECMG_SCS, ECMGSCSErrorStatus.ECM_ID_IN_USE) == "ECM_id value already in use"


def test_codec_error_kinds_answer_the_codes_of_the_tables():
    kinds = {
        wire.InvalidMessage: "INVALID_MESSAGE",
        wire.UnsupportedVersion: "UNSUPPORTED_PROTOCOL_VERSION",
        wire.UnknownMessageType: "UNKNOWN_MESSAGE_TYPE",
        wire.MessageTooLong: "MESSAGE_TOO_LONG",
        wire.UnknownParameterType: "UNKNOWN_PARAMETER_TYPE",
        wire.InconsistentLength: "INCONSISTENT_LENGTH",
        wire.MissingParameter: "MISSING_MANDATORY_PARAMETER",
        wire.InvalidValue: "INVALID_VALUE",
    }
    for kind, name in kinds.items():
        assert kind.ECMG_SCS_CODE == ECMGSCSErrorStatus[name] and kind.EMMG_MUX_CODE == EMMGMUXErrorStatus[name], kind


def test_each_interface_names_its_own_codes_and_id_fields():
    assert CHANNEL_INTERFACES[wire.Interface.ECMG_SCS] is ECMG_SCS_CHANNEL
    assert CHANNEL_INTERFACES[wire.Interface.EMMG_MUX] is EMMG_MUX_CHANNEL
    ecmg = ECMG_SCS_CHANNEL
    assert (ecmg.unknown_channel, ecmg.unknown_stream, ecmg.channel_id_in_use, ecmg.too_many_channels) == (6, 7, 0x13, 8)
    assert (ecmg.channel_field, ecmg.stream_field) == ("ECM_channel_id", "ECM_stream_id")
    mux = EMMG_MUX_CHANNEL
    assert (mux.unknown_channel, mux.unknown_stream, mux.channel_id_in_use, mux.too_many_channels) == (6, 5, 0x11, 7)
    assert (mux.channel_field, mux.stream_field) == ("data_channel_id", "data_stream_id")
    assert ecmg_scs.ECMResponse in ecmg.server_only and emmg_mux.StreamBWAllocation in mux.server_only


# -- reply builders --------------------------------------------------------------------------


def test_error_information_is_one_two_byte_value_or_none():
    assert error_information(None) == ()
    assert error_information(0x000D) == (b"\x00\x0d",)
    assert error_information(0x12345) == (b"\x23\x45",)


@pytest.mark.parametrize(
    ("channel_version", "hint", "expected"),
    [(2, 3, 2), (None, 2, 2), (None, 1, 3), (None, None, 3)],
    ids=["channel's", "message's when accepted", "newest when not", "newest without hint"],
)
def test_reply_version(channel_version, hint, expected):
    assert reply_version(channel_version, hint, frozenset({2, 3})) == expected


def test_ecmg_scs_error_builders_encode_and_decode():
    error = ecmg_scs_channel_error(3, 0x10005, ECMGSCSErrorStatus.UNKNOWN_SUPER_CAS_ID, 0x0001)
    assert wire.decode(error.encode(), wire.Interface.ECMG_SCS) == ecmg_scs.ChannelError(
        protocol_version=3, ECM_channel_id=5, error_status=(0x0005,), error_information=(b"\x00\x01",)
    )
    error = ecmg_scs_stream_error(2, 1, 9, ECMGSCSErrorStatus.NOT_ENOUGH_CONTROL_WORDS)
    assert (error.protocol_version, error.ECM_channel_id, error.ECM_stream_id, error.error_status, error.error_information) == (
        2, 1, 9, (0x000B,), ()
    )
    assert wire.decode(error.encode(), wire.Interface.ECMG_SCS) == error


def test_emmg_mux_error_builders_encode_and_decode():
    error = emmg_mux_channel_error(4, CLIENT, 2, EMMGMUXErrorStatus.UNKNOWN_CLIENT_ID, 0x0001)
    assert wire.decode(error.encode(), wire.Interface.EMMG_MUX) == emmg_mux.ChannelError(
        protocol_version=4, client_id=CLIENT, data_channel_id=2, error_status=(0x000E,), error_information=(b"\x00\x01",)
    )
    error = emmg_mux_stream_error(3, CLIENT, 0x10002, 7, EMMGMUXErrorStatus.EXCEEDED_BANDWIDTH)
    assert (error.data_channel_id, error.data_stream_id, error.error_status, error.error_information) == (2, 7, (0x000F,), ())
    assert wire.decode(error.encode(), wire.Interface.EMMG_MUX) == error


def test_peer_error_fields_read_either_interface():
    ecmg = ecmg_scs_stream_error(3, 1, 9, 0x0007)
    assert peer_error_fields(ecmg) == {"message_type": "stream_error", "channel_id": 1, "stream_id": 9, "error_status": [7]}
    mux = emmg_mux_channel_error(3, CLIENT, 2, 0x7001)
    assert peer_error_fields(mux) == {"message_type": "channel_error", "channel_id": 2, "stream_id": None,
                                      "error_status": [0x7001]}


# -- invalid counting ------------------------------------------------------------------------


@attrs.define
class Limits:
    max_invalid_messages: int
    versions: frozenset = frozenset({2, 3})


class Counter(InvalidCounting):
    def __init__(self, limit):
        self.config = Limits(limit)
        self.gave_up = 0

    def _give_up(self):
        self.gave_up += 1
        return [Notify("freed")]


def test_invalid_messages_in_a_row_close_after_what_the_owner_frees():
    counter = Counter(3)
    reply = emmg_mux_channel_error(3, CLIENT, 1, 0x0001)
    first = counter._invalid(reply, "bad", detail="x")
    assert sent(first) == [reply] and not [o for o in first if isinstance(o, Close)]
    assert notices(first, "bad")[0].fields == {"error_status": 1, "detail": "x"} and notices(first)[0].level == "warn"
    counter._invalid(reply, "bad")
    third = counter._invalid(reply, "bad")
    assert [type(o) for o in third] == [Send, Notify, Notify, Close] and counter.gave_up == 1
    assert third[-1].reason == "3 invalid messages in a row"


def test_a_valid_message_restarts_the_count_and_zero_never_closes():
    counter = Counter(2)
    reply = emmg_mux_channel_error(3, CLIENT, 1, 0x0001)
    counter._invalid(reply, "bad")
    assert counter._ok(Notify("fine")) == [Notify("fine")] and counter.invalid_in_a_row == 0
    assert not [o for o in counter._invalid(reply, "bad") if isinstance(o, Close)]
    never = Counter(0)
    for _ in range(10):
        assert not [o for o in never._invalid(reply, "bad") if isinstance(o, Close)]


# -- the server channel ----------------------------------------------------------------------


class MiniServer(ServerChannel):
    """An EMMG<=>MUX server channel with no rules of its own: setup opens, stream_setup adds."""

    INTERFACE = EMMG_MUX_CHANNEL
    HANDLERS = {emmg_mux.ChannelSetup: "_setup", emmg_mux.StreamSetup: "_stream_setup"}

    def __init__(self, limit=0):
        super().__init__(Limits(limit))
        self.client_id = None
        self.freed = []

    def channel_error(self, code, info=None, *, channel_id=None, version=None, client_id=None):
        return emmg_mux_channel_error(
            self._reply_version(version), self.client_id or 0 if client_id is None else client_id,
            self.channel_id or 0 if channel_id is None else channel_id, code, info,
        )

    def stream_error(self, stream_id, code, info=None, *, channel_id=None, version=None, client_id=None):
        return emmg_mux_stream_error(
            self._reply_version(version), self.client_id or 0 if client_id is None else client_id,
            self.channel_id or 0 if channel_id is None else channel_id, stream_id, code, info,
        )

    def _sender_ids(self, msg):
        return {"client_id": msg.client_id}

    def _check_sender(self, msg, stream_id):
        if msg.client_id == self.client_id:
            return None
        reply = (self.channel_error(0x000E, client_id=msg.client_id) if stream_id is None
                 else self.stream_error(stream_id, 0x000E, client_id=msg.client_id))
        return self._invalid(reply, "wrong_client_id")

    def _setup(self, msg, _now, _received_at):
        if self.state is ServerChannelState.CHANNEL_OPEN:
            return self._second_channel_setup(msg)
        self.state = ServerChannelState.CHANNEL_OPEN
        self.client_id, self.channel_id, self.version = msg.client_id, msg.data_channel_id, msg.protocol_version
        return self._ok(Send(self._channel_status()))

    def _stream_setup(self, msg, _now, _received_at):
        refused = self._stream_channel(msg)
        if refused:
            return refused
        # the stream record is the stream_status that describes it
        status = emmg_mux.StreamStatus(protocol_version=self.version, client_id=self.client_id, data_channel_id=self.channel_id,
                                       data_stream_id=msg.data_stream_id, data_id=msg.data_id, data_type=msg.data_type)
        self.streams[msg.data_stream_id] = status
        return self._ok(Send(self._stream_status(status)))

    def _channel_status(self):
        return emmg_mux.ChannelStatus(protocol_version=self.version, client_id=self.client_id,
                                      data_channel_id=self.channel_id, section_TSpkt_flag=2)

    def _stream_status(self, stream):
        return stream

    def _free_channel(self, why, now):
        self.freed.append((why, now, len(self.streams)))
        self.streams.clear()
        self.state = ServerChannelState.NO_CHANNEL
        self.client_id = self.channel_id = self.version = None
        return [Notify("channel_closed", {"why": why})]


IDS = {"client_id": CLIENT, "data_channel_id": 1}


def opened(limit=0, version=3):
    server = MiniServer(limit)
    one(server.receive(emmg_mux.ChannelSetup(protocol_version=version, section_TSpkt_flag=2, **IDS), 0.0), emmg_mux.ChannelStatus)
    return server


def test_codec_error_answers_its_code_with_the_ids_read_else_own_else_zero():
    server = MiniServer()
    error = wire.UnknownParameterType("x", interface=wire.Interface.EMMG_MUX, protocol_version=2, channel_id=7,
                                      error_information=0x00AA)
    reply = one(server.receive(error, 0.0), emmg_mux.ChannelError)
    assert (reply.protocol_version, reply.data_channel_id, reply.error_status, reply.error_information) == (
        2, 7, (0x000A,), (b"\x00\xaa",))
    reply = one(server.receive(wire.InvalidMessage("short", interface=wire.Interface.EMMG_MUX), 0.0), emmg_mux.ChannelError)
    assert (reply.protocol_version, reply.data_channel_id, reply.error_status) == (3, 0, (1,))  # newest version, channel 0
    server = opened(version=2)
    reply = one(server.receive(wire.InvalidMessage("short", interface=wire.Interface.EMMG_MUX), 0.0), emmg_mux.ChannelError)
    assert (reply.protocol_version, reply.data_channel_id, reply.client_id) == (2, 1, CLIENT)


def test_a_message_in_another_version_than_the_channel_s():
    server = opened(version=3)
    reply = one(server.receive(emmg_mux.ChannelTest(protocol_version=2, **IDS), 0.0), emmg_mux.ChannelError)
    assert (reply.protocol_version, reply.error_status, reply.error_information) == (
        3, (EMMGMUXErrorStatus.UNSUPPORTED_PROTOCOL_VERSION,), error_information(PROTOCOL_VERSION_OFFSET))


def test_second_channel_setup_same_id_is_in_use_other_id_too_many_channels():
    server = opened()
    setup = emmg_mux.ChannelSetup(protocol_version=3, section_TSpkt_flag=2, **IDS)
    assert error_of(server.receive(setup, 0.0), emmg_mux.ChannelError) == 0x0011
    other = attrs.evolve(setup, data_channel_id=2)
    reply = one(server.receive(other, 0.0), emmg_mux.ChannelError)
    assert reply.error_status == (0x0007,) and reply.data_channel_id == 2


def test_channel_test_and_close_need_the_own_channel_and_sender():
    server = MiniServer()
    reply = one(server.receive(emmg_mux.ChannelTest(protocol_version=3, **IDS), 0.0), emmg_mux.ChannelError)
    assert reply.error_status == (0x0006,) and reply.data_channel_id == 1 and reply.client_id == CLIENT
    server = opened()
    assert error_of(server.receive(emmg_mux.ChannelTest(protocol_version=3, client_id=CLIENT, data_channel_id=2), 0.0),
                    emmg_mux.ChannelError) == 0x0006
    assert error_of(server.receive(emmg_mux.ChannelClose(protocol_version=3, client_id=OTHER, data_channel_id=1), 0.0),
                    emmg_mux.ChannelError) == 0x000E
    assert one(server.receive(emmg_mux.ChannelTest(protocol_version=3, **IDS), 0.0), emmg_mux.ChannelStatus)
    outputs = server.receive(emmg_mux.ChannelClose(protocol_version=3, **IDS), 5.0)
    assert sent(outputs) == [] and server.freed == [("channel_close", 5.0, 0)]
    assert server.state is ServerChannelState.NO_CHANNEL and server.invalid_in_a_row == 0


def test_stream_level_checks_unknown_channel_sender_then_stream():
    server = MiniServer()
    test = emmg_mux.StreamTest(protocol_version=2, data_stream_id=4, **IDS)
    reply = one(server.receive(test, 0.0), emmg_mux.StreamError)  # before set-up: stream_error, the message's version
    assert (reply.error_status, reply.data_stream_id, reply.protocol_version) == ((0x0006,), 4, 2)
    server = opened()
    reply = one(server.receive(attrs.evolve(test, protocol_version=3, client_id=OTHER), 0.0), emmg_mux.StreamError)
    assert (reply.error_status, reply.client_id) == ((0x000E,), OTHER)
    assert error_of(server.receive(attrs.evolve(test, protocol_version=3), 0.0), emmg_mux.StreamError) == 0x0005
    setup = emmg_mux.StreamSetup(protocol_version=3, data_stream_id=4, data_id=9, data_type=0, **IDS)
    one(server.receive(setup, 0.0), emmg_mux.StreamStatus)
    status = one(server.receive(attrs.evolve(test, protocol_version=3), 0.0), emmg_mux.StreamStatus)
    assert (status.data_stream_id, status.data_id) == (4, 9)


def test_peer_status_and_errors_are_noted_and_reset_the_count():
    server = opened(limit=2)
    server.receive(emmg_mux.ChannelTest(protocol_version=3, client_id=CLIENT, data_channel_id=2), 0.0)
    assert server.invalid_in_a_row == 1
    outputs = server.receive(emmg_mux.StreamError(protocol_version=3, data_stream_id=1, error_status=(0x000F,), **IDS), 0.0)
    assert sent(outputs) == [] and server.invalid_in_a_row == 0
    assert notices(outputs, "peer_error")[0].fields["error_status"] == [0x000F]
    outputs = server.receive(emmg_mux.ChannelStatus(protocol_version=3, section_TSpkt_flag=2, **IDS), 0.0)
    assert sent(outputs) == [] and notices(outputs, "peer_status")[0].level == "debug"


def test_a_message_only_the_server_sends_is_invalid_with_the_message_type_offset():
    server = opened()
    allocation = emmg_mux.StreamBWAllocation(protocol_version=3, data_stream_id=1, bandwidth=5, **IDS)
    reply = one(server.receive(allocation, 0.0), emmg_mux.ChannelError)
    assert reply.error_status == (EMMGMUXErrorStatus.INVALID_MESSAGE,)
    assert reply.error_information == error_information(MESSAGE_TYPE_OFFSET)


def test_too_many_invalid_messages_free_the_channel_then_close():
    server = opened(limit=2)
    bad = emmg_mux.ChannelTest(protocol_version=3, client_id=CLIENT, data_channel_id=2)
    server.receive(bad, 1.0)
    outputs = server.receive(bad, 2.0)
    assert isinstance(outputs[-1], Close) and server.freed == [("connection_lost", 2.0, 0)]
    assert server.state is ServerChannelState.NO_CHANNEL


def test_connection_lost_frees_an_open_channel_only():
    assert MiniServer().connection_lost(1.0) == []
    server = opened()
    server.receive(emmg_mux.StreamSetup(protocol_version=3, data_stream_id=4, data_id=9, data_type=0, **IDS), 0.0)
    assert notices(server.connection_lost(3.0), "channel_closed") and server.freed == [("connection_lost", 3.0, 1)]


def test_a_server_channel_is_freed_by_reference_counting_alone():
    """The dispatch table holds functions per class, not bound methods per connection: a closed
    connection's machine goes with its last reference, without the cyclic collector."""
    import weakref

    with cyclic_gc_off():
        server = MiniServer()
        server.receive(emmg_mux.ChannelTest(protocol_version=3, client_id=1, data_channel_id=1), 0.0)
        gone = weakref.ref(server)
        del server
        assert gone() is None
    assert MiniServer._dispatch_table()[emmg_mux.ChannelSetup] is MiniServer._setup
