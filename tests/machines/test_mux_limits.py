"""MUX amplification bounds and UDP sender identity (issue #13 items 2 and 5), on the pure machine.

Time is a float moved by hand. The issue's message: one data_provision of 10,000 one-byte STKM
datagrams on an STKM stream.
"""

from __future__ import annotations

import ipaddress

import pytest

from bcast_sp4.machines.mux import ClientConfig, Deliver, Emit, MuxConfig, MuxConnection, MuxCore, RouteConfig, RouteKind
from bcast_sp4.machines.mux.limits import MuxLimits, UdpSources, normal_host
from bcast_sp4.wire import emmg_mux as m
from tests.doubles import notices, one, sent

SCS = 0x00010001
STKM_ID, LTKM_ID = 1, 0x0100


def config(route_kbit=0xFFFF, client_kbit=0xFFFF, period_ms=100, **limits):
    routes = {
        STKM_ID: RouteConfig(kind=RouteKind.STKM, data_id=STKM_ID, destination=("127.0.0.1", 6001),
                             repetition_period=period_ms, max_bandwidth=route_kbit),
        LTKM_ID: RouteConfig(kind=RouteKind.LTKM, data_id=LTKM_ID, destination=("127.0.0.1", 4359), max_bandwidth=500),
    }
    clients = {SCS: ClientConfig(client_id=SCS, routes=routes, max_bandwidth=client_kbit, max_channels=2)}
    return MuxConfig(clients=clients, max_invalid_messages=0, limits=MuxLimits(**limits))


def opened(core, peer="127.0.0.1", now=0.0):
    conn = MuxConnection(core, peer_host=peer)
    one(conn.receive(m.ChannelSetup(protocol_version=3, client_id=SCS, data_channel_id=1, section_TSpkt_flag=2), now),
        m.ChannelStatus)
    one(conn.receive(m.StreamSetup(protocol_version=3, client_id=SCS, data_channel_id=1, data_stream_id=1,
                                   data_id=STKM_ID, data_type=2), now), m.StreamStatus)
    return conn


def provide(conn, datagrams, now):
    return conn.receive(m.DataProvision(protocol_version=3, client_id=SCS, data_channel_id=1, data_stream_id=1,
                                        data_id=STKM_ID, datagram=tuple(datagrams)), now)


def run(core, start, end, step=0.001):
    """Emitted (time, bytes) between *start* and *end*, ticking at every wake-up (bounded loop)."""
    out = []
    now = start
    for _ in range(1_000_000):
        out += [(now, len(o.payload)) for o in core.tick(now) if type(o) is Emit]
        wake = core.next_wakeup(now)
        if wake is None or wake >= end:
            break
        now = max(wake, now + 1e-9)
    return out


def test_the_issue_amplification_message_is_refused_with_message_too_long_and_counted():
    core = MuxCore(config())
    conn = opened(core)
    provide(conn, [b"current STKM"], 0.0)
    outputs = provide(conn, [b"x"] * 10_000, 0.01)
    error = one(outputs, m.StreamError)
    assert error.error_status == (0x0004,) and error.error_information == (b"\x00\x05",)
    assert core.counters["stkm_refused"] == 1 and core.dropped["stkm_limit"] == 10_000
    # the current STKM stays, repeated at its period: 10 copies a second, not 100,000 datagrams
    emitted = run(core, 0.01, 1.0)
    assert 9 <= len(emitted) <= 11 and {size for _t, size in emitted} == {len(b"current STKM")}


def test_an_stkm_larger_than_max_stkm_size_is_refused_with_invalid_value():
    core = MuxCore(config(max_stkm_size=100))
    conn = opened(core)
    error = one(provide(conn, [b"y" * 101], 0.0), m.StreamError)
    assert error.error_status == (0x000D,)
    assert run(core, 0.0, 1.0) == []
    assert provide(conn, [b"y" * 100], 0.0) == []  # at the limit: taken, no reply


@pytest.mark.parametrize("route_kbit, client_kbit", [(80, 0xFFFF), (0xFFFF, 80)])
def test_repetition_never_exceeds_the_route_bandwidth(route_kbit, client_kbit):
    # 16 datagrams of 1,000 bytes every 100 ms would be 1,280 kbit/s; the route allows 80 kbit/s
    core = MuxCore(config(route_kbit=route_kbit, client_kbit=client_kbit))
    conn = opened(core)
    outputs = provide(conn, [b"z" * 1000] * 16, 0.0)
    error = one(outputs, m.StreamError)
    assert error.error_status == (0x000F,)
    assert core.counters["stkm_stretched"] == 1 and notices(outputs, "stkm_exceeds_bandwidth")
    emitted = run(core, 0.0, 10.0)
    total = sum(size for _t, size in emitted)
    # over 10 s at 10,000 bytes/s: at most 100,000 bytes plus the one set that starts the window
    assert total <= 10.0 * 80 * 125 + 16_000
    assert total >= 6 * 16_000  # and it is still repeated (every 1.6 s)


def test_replacements_faster_than_the_bandwidth_wait_for_it():
    core = MuxCore(config(route_kbit=8))  # 1,000 bytes/s
    conn = opened(core)
    out = []
    now = 0.0
    for k in range(200):  # a new 500-byte STKM every 10 ms for 2 s (50 kB offered)
        provide(conn, [bytes([k % 256]) * 500], now)
        out += [len(o.payload) for o in core.tick(now) if type(o) is Emit]
        now += 0.01
    assert sum(out) <= 2.0 * 1000 + 500


def test_stkm_stops_after_its_sender_is_gone_for_the_grace():
    core = MuxCore(config(stkm_sender_grace=2.0))
    conn = opened(core)
    provide(conn, [b"last"], 0.0)
    run(core, 0.0, 0.5)
    stopped = []
    conn.connection_lost(0.5)
    now = 0.5
    emitted = []
    for _ in range(100):
        outputs = core.tick(now)
        emitted += [now for o in outputs if type(o) is Emit]
        stopped += notices(outputs, "stkm_stopped")
        wake = core.next_wakeup(now)
        if wake is None:
            break
        now = wake
    assert emitted and max(emitted) < 2.5 + 1e-6  # repeated within the grace, never after
    assert len(stopped) == 1 and stopped[0].fields["why"] == "sender_gone"
    assert core.counters["stkm_stopped"] == 1 and core.next_wakeup(now) is None


def test_a_new_stream_within_the_grace_keeps_the_route_going():
    core = MuxCore(config(stkm_sender_grace=1.0))
    conn = opened(core)
    provide(conn, [b"n"], 0.0)
    conn.connection_lost(0.2)
    again = opened(core, now=0.5)
    provide(again, [b"n+1"], 0.6)
    emitted = run(core, 0.6, 3.0)
    assert emitted and max(t for t, _s in emitted) > 2.5


def test_in_process_stkm_stops_at_its_validity_and_max_age_applies_to_the_rest():
    core = MuxCore(config())
    core.submit_stkm(SCS, STKM_ID, b"cp n", None, 0.0, valid_until=1.0)
    emitted = run(core, 0.0, 5.0)
    assert emitted and max(t for t, _s in emitted) < 1.0
    aged = MuxCore(config(stkm_max_age=0.5))
    aged.submit_stkm(SCS, STKM_ID, b"cp n", None, 0.0)
    emitted = run(aged, 0.0, 5.0)
    assert emitted and max(t for t, _s in emitted) < 0.5
    assert aged.counters["stkm_stopped"] == 1


# -- UDP identity ------------------------------------------------------------------------------


def udp(client=SCS, data_id=STKM_ID, payload=b"INJECTED"):
    return m.DataProvision(protocol_version=3, client_id=client, data_id=data_id, datagram=(payload,))


def test_udp_from_an_address_other_than_the_tcp_peer_is_dropped_and_never_reported():
    core = MuxCore(config())
    opened(core, peer="127.0.0.1")
    forged = core.receive_udp(udp(), 0.0, "192.0.2.7")
    assert not [o for o in forged if type(o) in (Deliver, Emit)]
    assert core.dropped["udp_source"] == 1
    # a forged malformed one names the client too: still never reported on the TCP connection
    bad = m.StreamTest(protocol_version=3, client_id=SCS, data_channel_id=1, data_stream_id=1)
    assert not [o for o in core.receive_udp(bad, 0.0, "192.0.2.7") if type(o) is Deliver]
    assert core.receive_udp_fast(3, SCS, STKM_ID, b"x", 0.0, "192.0.2.7") is None
    # from the TCP peer's address it is taken (and made the current STKM)
    assert core.receive_udp(udp(payload=b"REAL"), 0.0, "127.0.0.1") == []
    assert [o.payload for o in core.tick(0.0) if type(o) is Emit] == [b"REAL"]


def test_udp_sources_configured_list_replaces_the_tcp_peer():
    nets = (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("::1/128"))
    core = MuxCore(config(udp_sources={SCS: nets}))
    opened(core, peer="127.0.0.1")
    core.receive_udp(udp(), 0.0, "127.0.0.1")
    assert core.dropped["udp_source"] == 1
    assert core.receive_udp(udp(payload=b"A"), 0.0, "10.1.200.3") == []
    assert [o.payload for o in core.tick(0.0) if type(o) is Emit] == [b"A"]
    core.receive_udp(udp(payload=b"B"), 0.1, "::1")
    assert [o.payload for o in core.tick(0.1) if type(o) is Emit] == [b"B"]
    assert core.dropped["udp_source"] == 1


def test_udp_sources_follow_channels_and_mapped_addresses():
    sources = UdpSources({})
    assert not sources.allowed(SCS, "127.0.0.1")
    sources.opened(SCS, "::ffff:127.0.0.1")
    sources.opened(SCS, "127.0.0.1")
    assert sources.allowed(SCS, "127.0.0.1") and sources.allowed(SCS, "::ffff:127.0.0.1")
    sources.closed(SCS, "127.0.0.1")
    assert sources.allowed(SCS, "127.0.0.1")  # the other channel is still open
    sources.closed(SCS, "::ffff:127.0.0.1")
    assert not sources.allowed(SCS, "127.0.0.1")
    assert normal_host("::ffff:10.0.0.1") == "10.0.0.1" and normal_host("not an address") == "not an address"
