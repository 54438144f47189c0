"""MUX UDP port, batch path: MuxDatagramProtocol.datagramsReceived against datagramReceived.

Twin servers (UDPMemoryReactor, FakeSocket egress) get the same datagrams, one as a batch (what
BatchUDPPort hands over), one datagram by datagram: the same datagrams leave, in the same order per
route, with the same counters, drops and TCP error reports.
"""

from __future__ import annotations

from bcast_sp4.machines.mux import EmitMany
from bcast_sp4.wire import emmg_mux as m

from .test_mux_server import BSM, IDS, connect, egress, make_server, open_ltkm_stream, replies

SOURCE = ("127.0.0.1", 5555)


def usual(payload: bytes, data_id: int = 0x100, version: int = 3) -> bytes:
    return m.DataProvision(protocol_version=version, client_id=BSM, data_id=data_id, datagram=(payload,)).encode()


BATCH = [
    usual(b"one"),
    usual(b"two"),
    m.DataProvision(**IDS, data_stream_id=1, data_id=0x100, datagram=(b"with ids",)).encode(),  # not the usual shape
    usual(b"three"),
    usual(b"?", data_id=0x0999),  # no stream: channel_error 0x0010 over TCP
    b"\x03\x02\x11\x00",  # truncated: counted
    usual(b"v2", version=2),  # another version than the channel's
    usual(b"four"),
]


def twins(**kw):
    out = []
    for _ in range(2):
        reactor, server = make_server(unthrottled=True, **kw)
        protocol, transport = connect(server)
        open_ltkm_stream(protocol, transport, kbit=1000)
        out.append((reactor, server, transport))
    return out


def test_a_batch_does_what_the_same_datagrams_one_by_one_do():
    (r1, one_by_one, t1), (r2, batched, t2) = twins()
    for data in BATCH:
        one_by_one.udp_protocol.datagramReceived(data, SOURCE)
    emitted = []
    real = batched.play_out.emit_many
    batched.play_out.emit_many = lambda output: emitted.append(output) or real(output)
    batched.udp_protocol.datagramsReceived([(data, SOURCE) for data in BATCH])
    assert any(type(o) is EmitMany and len(o.payloads) == 2 for o in emitted)  # one, two: one EmitMany
    for reactor in (r1, r2):
        reactor.advance(0.1)
    sent = egress(r2, ("127.0.0.1", 4359)).sent
    assert sent == egress(r1, ("127.0.0.1", 4359)).sent == [b"one", b"two", b"with ids", b"three", b"four"]
    assert batched.core.counters == one_by_one.core.counters
    assert batched.core.dropped == one_by_one.core.dropped
    assert [type(r) for r in replies(t2)] == [type(r) for r in replies(t1)]


def test_an_empty_or_all_unusual_batch_is_handled_one_by_one():
    (_r1, one_by_one, t1), (_r2, batched, t2) = twins()
    odd = [b"\x03\x02\x11\x00", usual(b"?", data_id=0x0999)]
    batched.udp_protocol.datagramsReceived([])
    batched.udp_protocol.datagramsReceived([(d, SOURCE) for d in odd])
    for d in odd:
        one_by_one.udp_protocol.datagramReceived(d, SOURCE)
    assert batched.core.dropped == one_by_one.core.dropped
    assert [type(r) for r in replies(t2)] == [type(r) for r in replies(t1)]


FOREIGN = ("192.0.2.9", 5555)  # not BSM's TCP peer, no udp_sources: dropped as udp_source, never answered

MIXED = (
    [(usual(b"r1-%02d" % k), SOURCE) for k in range(6)]  # one run: one header, one sender
    + [(usual(b"f1-%02d" % k), FOREIGN) for k in range(3)]  # the same header from elsewhere: its own run, refused
    + [(usual(b"r1-%02d" % k), SOURCE) for k in range(6, 9)]  # the first run's header again: a new run
    + [(usual(b"longer-%02d" % k), SOURCE) for k in range(4)]  # another length: another run
    + [(b"\x03\x02\x11\x00", SOURCE)]  # truncated: counted
    + [(usual(b"r2-%02d" % k, version=2), SOURCE) for k in range(3)]  # another version than the channel's
    + [(usual(b"?-%02d" % k, data_id=0x0999), SOURCE) for k in range(2)]  # no stream for that data_id
    + [(m.DataProvision(**IDS, data_stream_id=1, data_id=0x100, datagram=(b"ids",)).encode(), SOURCE)]
    + [(usual(b"r3-%02d" % k), SOURCE) for k in range(5)]
    + [(usual(b"f2"), FOREIGN), (usual(b"r3-99"), SOURCE)]
)


def test_runs_with_valid_invalid_and_foreign_datagrams_do_what_one_by_one_does():
    (r1, one_by_one, t1), (r2, batched, t2) = twins()
    for data, addr in MIXED:
        one_by_one.udp_protocol.datagramReceived(data, addr)
    runs = []
    real = batched.core.receive_udp_runs
    batched.core.receive_udp_runs = lambda given, now: runs.append([len(r[4]) for r in given]) or real(given, now)
    batched.udp_protocol.datagramsReceived(list(MIXED))
    assert runs[0][:2] == [6, 3]  # six datagrams judged as one run, the foreign three as the next
    for reactor in (r1, r2):
        reactor.advance(0.1)
    sent = egress(r2, ("127.0.0.1", 4359)).sent
    expected = ([b"r1-%02d" % k for k in range(9)] + [b"longer-%02d" % k for k in range(4)] + [b"ids"]
                + [b"r3-%02d" % k for k in range(5)] + [b"r3-99"])
    assert sent == egress(r1, ("127.0.0.1", 4359)).sent == expected
    assert batched.core.counters == one_by_one.core.counters
    assert batched.core.dropped == one_by_one.core.dropped
    assert batched.core.dropped["udp_source"] == 4
    assert [type(r) for r in replies(t2)] == [type(r) for r in replies(t1)]


def test_a_batch_needs_no_more_than_one_run_per_header_and_sender():
    (_r, server, _t), = twins()[:1]
    runs = []
    real = server.core.receive_udp_runs
    server.core.receive_udp_runs = lambda given, now: runs.append([len(r[4]) for r in given]) or real(given, now)
    server.udp_protocol.datagramsReceived([(usual(b"x" * 200), SOURCE)] * 500)
    assert runs == [[500]]
    assert server.core.counters["udp_messages"] == server.core.counters["datagrams_out"] == 500


def test_play_out_counts_each_datagram_a_segmented_send_failed():
    import errno

    from twisted.logger import capturedLogs

    from bcast_sp4.roles.udp_gso import SegmentedSender

    from .test_udp_gso import Segmenting

    (_r, server, _t), = twins()[:1]
    key = (BSM, 0x100)
    refused = Segmenting(fail_gso=OSError(errno.ECONNREFUSED, "refused"))
    server.play_out.senders[key] = SegmentedSender(refused, enabled=True)
    server.udp_protocol.datagramsReceived([(usual(b"p%d" % k), SOURCE) for k in range(4)])
    assert refused.sent == [b"p1", b"p2", b"p3"]  # the first met the refusal, as its own send would have
    assert server.core.dropped["egress_error"] == 1
    assert server.core.counters["datagrams_out"] == 3 and server.core.route_stats(key)["datagrams_out"] == 3
    unsupported = Segmenting(fail_gso=OSError(errno.EIO, "no checksum offload"))
    server.play_out.senders[key] = SegmentedSender(unsupported, enabled=True)
    with capturedLogs() as events:
        server.udp_protocol.datagramsReceived([(usual(b"q%d" % k), SOURCE) for k in range(4)])
        server.udp_protocol.datagramsReceived([(usual(b"r%d" % k), SOURCE) for k in range(2)])
    assert unsupported.sent == [b"q0", b"q1", b"q2", b"q3", b"r0", b"r1"] and unsupported.gso == []
    assert len([e for e in events if "segmentation offload off" in e.get("log_format", "")]) == 1
    assert server.core.dropped["egress_error"] == 1
