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
