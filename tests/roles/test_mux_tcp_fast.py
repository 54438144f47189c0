"""MUX TCP hot path: runs of usual data_provisions judged once (MuxProtocol._handle_frames,
MuxConnection.data_run, MuxCore.ingest_run) do what the full decode of each does.

Twin servers (UDPMemoryReactor, FakeSocket egress, StringTransport): one with the hot path, one
with it turned off (``parse_usual_tcp`` finds nothing), fed the same bytes; the same datagrams
leave in the same order, with the same counters, drops and TCP replies.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bcast_sp4 import wire
from bcast_sp4.machines.mux import EmitMany
from bcast_sp4.roles import mux_server
from bcast_sp4.roles.mux_server import parse_usual_tcp
from bcast_sp4.wire import emmg_mux as m

from .test_mux_server import BSM, IDS, connect, egress, make_server, open_ltkm_stream, replies, send

LTKM = ("127.0.0.1", 4359)


def dp(payload: bytes, **kw) -> m.DataProvision:
    fields = dict(IDS, data_stream_id=1, data_id=0x100, datagram=(payload,))
    fields.update(kw)
    return m.DataProvision(**fields)


MIXED = (
    [dp(b"a%02d" % k) for k in range(5)]  # one run
    + [dp(b"wrong channel", data_channel_id=2)]  # 0x0006
    + [dp(b"b%02d" % k) for k in range(3)]
    + [dp(b"wrong stream", data_stream_id=7)]  # 0x0005
    + [dp(b"wrong data_id", data_id=0x0999)]
    + [m.StreamBWRequest(**IDS, data_stream_id=1, bandwidth=500)]  # another message between runs
    + [dp(b"longer-%02d" % k) for k in range(4)]  # another length: another run
    + [dp(b"two", datagram=(b"x", b"y"))]  # two datagrams: not the usual shape
    + [dp(b"v2", protocol_version=2)]  # not the channel's version
    + [dp(b"wrong client", client_id=0x00020001)]
    + [dp(b"c%02d" % k) for k in range(3)]
)


def twins(monkeypatch, **kw):
    """(hot path server, its transport), (full-decode server, its transport)."""
    out = []
    for _ in range(2):
        reactor, server = make_server(**kw)
        protocol, transport = connect(server)
        open_ltkm_stream(protocol, transport, kbit=1000)
        out.append((reactor, server, protocol, transport))
    return out


def feed(protocol, messages, chunk=None, fast=True, monkeypatch=None):
    if not fast:
        monkeypatch.setattr(mux_server, "parse_usual_tcp", lambda frame: None)
    try:
        send(protocol, *messages, chunk=chunk)
    finally:
        if not fast:
            monkeypatch.undo()


def compare(monkeypatch, messages, chunk=None, **kw):
    (r1, fast, p1, t1), (r2, full, p2, t2) = twins(monkeypatch, **kw)
    runs = []
    real = p1.machine.data_run
    p1.machine.data_run = lambda *a: runs.append(len(a[5])) or real(*a)
    feed(p1, messages, chunk)
    feed(p2, messages, chunk, fast=False, monkeypatch=monkeypatch)
    for reactor in (r1, r2):
        reactor.advance(1.0)
    assert fast.core.counters == full.core.counters
    assert fast.core.dropped == full.core.dropped
    assert replies(t1) == replies(t2)
    assert egress(r1, LTKM).sent == egress(r2, LTKM).sent
    return runs, egress(r1, LTKM).sent, fast


def test_runs_do_what_the_full_decode_does_unthrottled(monkeypatch):
    runs, sent, server = compare(monkeypatch, MIXED, unthrottled=True)
    assert runs[:3] == [5, 1, 3]  # five usual ones judged at once, the wrong channel alone (refused), then three
    assert sent[:8] == [b"a%02d" % k for k in range(5)] + [b"b%02d" % k for k in range(3)]
    assert sent[-3:] == [b"c%02d" % k for k in range(3)]
    assert server.core.counters["data_provisions"] == 5 + 3 + 4 + 1 + 3  # the two-datagram one is one message


def test_runs_do_what_the_full_decode_does_paced_and_in_small_chunks(monkeypatch):
    runs, sent, _server = compare(monkeypatch, MIXED, chunk=7)
    assert runs and sent  # queued, then paced out as the full decode's would be


def test_the_meter_counts_each_data_provision_of_a_run(monkeypatch):
    class Meter:
        def __init__(self):
            self.received = []

        def message_received(self, role, peer, message, now):
            self.received.append(type(message).__name__)

        def message_sent(self, role, peer, message, now):
            pass

        def connection_made(self, role):
            pass

        def connection_lost(self, role):
            pass

    counts = []
    for fast in (True, False):
        reactor, server = make_server(unthrottled=True)
        meter = Meter()
        server.play_out.executor.meter = meter
        protocol, transport = connect(server)
        open_ltkm_stream(protocol, transport, kbit=1000)
        feed(protocol, [dp(b"p%d" % k) for k in range(6)], fast=fast, monkeypatch=monkeypatch)
        counts.append(meter.received)
    assert counts[0] == counts[1] and counts[0].count("DataProvision") == 6


def test_a_bug_in_the_hot_path_closes_only_that_connection(monkeypatch):
    reactor, server = make_server(unthrottled=True)
    protocol, transport = connect(server)
    open_ltkm_stream(protocol, transport, kbit=1000)

    def broken(*_args):
        raise RuntimeError("bug")

    protocol.machine.data_run = broken
    send(protocol, dp(b"x"), dp(b"y"))
    assert transport.disconnecting
    other, other_transport = connect(server, port=40001)
    assert not other_transport.disconnecting


@settings(max_examples=300, deadline=None)
@given(
    version=st.integers(2, 5),
    client_id=st.integers(0, 2**32 - 1),
    channel_id=st.integers(0, 0xFFFF),
    stream_id=st.integers(0, 0xFFFF),
    data_id=st.integers(0, 0xFFFF),
    datagrams=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=3),
    flips=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=3),
)
def test_usual_tcp_shape_is_taken_apart_exactly_as_the_codec_does(version, client_id, channel_id, stream_id, data_id,
                                                                     datagrams, flips):
    frame = bytearray(m.DataProvision(protocol_version=version, client_id=client_id, data_channel_id=channel_id,
                                      data_stream_id=stream_id, data_id=data_id, datagram=tuple(datagrams)).encode())
    for position, value in flips:
        if position < len(frame):
            frame[position] = value
    frame = bytes(frame)
    fast = parse_usual_tcp(frame)
    if fast is not None:
        message = wire.decode(frame, wire.Interface.EMMG_MUX)
        assert type(message) is m.DataProvision and len(message.datagram) == 1
        assert fast == (message.protocol_version, message.client_id, message.data_channel_id, message.data_stream_id,
                        message.data_id)
        assert frame[35:] == message.datagram[0]
    elif not flips and len(datagrams) == 1:
        raise AssertionError("the canonical shape must take the fast path")


def test_nothing_after_a_close_is_handled_as_with_the_full_decode(monkeypatch):
    messages = ([dp(b"a%d" % k) for k in range(3)] + [dp(b"bad", data_channel_id=9)] * 2
                + [dp(b"after%d" % k) for k in range(3)])
    runs, sent, server = compare(monkeypatch, messages, unthrottled=True, max_invalid_messages=2)
    assert sent == [b"a0", b"a1", b"a2"]  # the second error in a row closed the connection
    assert server.core.counters["data_provisions"] == 3


def test_a_closing_connection_ingests_nothing_more():
    reactor, server = make_server(unthrottled=True)
    protocol, transport = connect(server)
    open_ltkm_stream(protocol, transport, kbit=1000)
    protocol.outbox.ask_close(mux_server.Close("test", "info"))
    assert protocol.handle_frames([dp(b"late").encode()], 0.0) == 1
    assert server.core.counters["data_provisions"] == 0 and egress(reactor, LTKM).sent == []
