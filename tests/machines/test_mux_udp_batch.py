"""MuxCore.receive_udp_batch: the same counters, queues and datagrams as one receive_udp_fast per item.

Pure: two cores with the same configuration and streams, one fed item by item, one in a batch.
"""

from __future__ import annotations

from bcast_sp4.machines.mux import Emit, EmitMany, MuxConnection, MuxCore
from bcast_sp4.wire import emmg_mux as m
from tests.doubles import one
from tests.machines.test_mux_machine import (
    BSM,
    CARD,
    LTKM,
    LTKM2,
    OTHER,
    STKM_ID,
    STKM_TYPE,
    bw,
    channel,
    make_config,
    ready,
    stream,
)


def twin_cores(peer_host=None, **kw):
    """Two cores, each with BSM's LTKM and LTKM2 streams, OTHER's and CARD's STKM stream live (v3);
    *peer_host*: the TCP peer address of BSM's connection (``None``: unknown, any UDP source)."""
    cores = []
    for _ in range(2):
        core = MuxCore(make_config(**kw))
        bsm, other, card = MuxConnection(core), MuxConnection(core), MuxConnection(core)
        bsm.peer_host = peer_host
        ready(None, bsm, kbit=200)
        one(stream(bsm, st=2, data_id=LTKM2), m.StreamStatus)
        one(bw(bsm, 100, st=2), m.StreamBWAllocation)
        ready(None, other, kbit=100, client=OTHER, data_id=0x0200)
        one(channel(card, client=CARD), m.ChannelStatus)
        one(stream(card, data_id=STKM_ID, data_type=STKM_TYPE, client=CARD), m.StreamStatus)
        cores.append(core)
    return cores


def flatten(outputs):
    """Every datagram the outputs emit, as (route, payload), in order."""
    out = []
    for o in outputs:
        if type(o) is Emit:
            out.append((o.route, o.payload))
        elif type(o) is EmitMany:
            out += [(o.route, p) for p in o.payloads]
    return out


def per_route(pairs):
    routes: dict = {}
    for route, payload in pairs:
        routes.setdefault(route, []).append(payload)
    return routes


ITEMS = [
    (3, BSM, LTKM, b"a1", None),
    (3, BSM, LTKM2, b"b1", None),
    (3, BSM, LTKM, b"a2", None),
    (3, OTHER, 0x0200, b"o1", None),
    (3, BSM, LTKM, b"a3" * 100, None),
    (3, CARD, STKM_ID, b"stkm-1", None),  # an STKM route: through ingest, the carousel
    (3, BSM, LTKM2, b"b2", None),
]


def test_batch_equals_item_by_item_unthrottled():
    one_by_one, batched = twin_cores(unthrottled=True)
    single = []
    for *item, source in ITEMS:
        outputs = one_by_one.receive_udp_fast(*item, 5.0, source)
        assert outputs is not None
        single += outputs
    outputs, taken = batched.receive_udp_batch(ITEMS, 5.0)
    assert taken == len(ITEMS)
    assert any(type(o) is EmitMany for o in outputs)
    # order is kept within every route (routes are distinct destinations)
    assert per_route(flatten(outputs)) == per_route(flatten(single))
    assert batched.counters == one_by_one.counters
    for key in one_by_one.routes:
        assert batched.route_stats(key) == one_by_one.route_stats(key)
    assert per_route(flatten(batched.tick(5.0))) == per_route(flatten(one_by_one.tick(5.0)))


def test_batch_queues_like_item_by_item_when_paced():
    one_by_one, batched = twin_cores()
    single = []
    for *item, source in ITEMS:
        single += one_by_one.receive_udp_fast(*item, 5.0, source)
    outputs, taken = batched.receive_udp_batch(ITEMS, 5.0)
    assert taken == len(ITEMS)
    assert not any(type(o) is EmitMany for o in outputs)
    assert batched.counters == one_by_one.counters
    for key in one_by_one.routes:
        assert batched.route_stats(key) == one_by_one.route_stats(key)
    emitted = per_route(flatten(batched.tick(6.0)))
    assert emitted == per_route(flatten(one_by_one.tick(6.0)))
    assert emitted[BSM, LTKM][:2] == [b"a1", b"a2"]  # paced out of the queue, in arrival order


def test_batch_stops_at_the_first_item_without_a_live_stream():
    _, core = twin_cores(unthrottled=True)
    items = [(3, BSM, LTKM, b"x", None), (3, BSM, 0x0999, b"no route", None), (3, BSM, LTKM, b"y", None)]
    outputs, taken = core.receive_udp_batch(items, 1.0)
    assert taken == 1 and flatten(outputs) == [((BSM, LTKM), b"x")]
    assert core.counters["udp_messages"] == 1
    # a version other than the stream's stops it too, before anything is counted for it
    outputs, taken = core.receive_udp_batch([(2, BSM, LTKM, b"z", None)], 1.0)
    assert (outputs, taken) == ([], 0)
    assert core.counters["udp_messages"] == 1
    outputs, taken = core.receive_udp_batch(items[2:], 1.0)
    assert taken == 1 and flatten(outputs) == [((BSM, LTKM), b"y")]


def test_batch_too_long_datagram_takes_the_ingest_path_in_order():
    one_by_one, batched = twin_cores(unthrottled=True, max_datagram_size=10)
    items = [(3, BSM, LTKM, b"short", None), (3, BSM, LTKM, b"x" * 11, None), (3, BSM, LTKM, b"after", None)]
    single = []
    for *item, source in items:
        single += one_by_one.receive_udp_fast(*item, 2.0, source)
    outputs, taken = batched.receive_udp_batch(items, 2.0)
    assert taken == 3
    assert flatten(outputs) == flatten(single) == [((BSM, LTKM), b"short"), ((BSM, LTKM), b"after")]
    assert batched.counters == one_by_one.counters
    assert dict(batched.dropped) == dict(one_by_one.dropped)


def test_batch_stops_where_receive_udp_fast_would_refuse_the_source():
    one_by_one, batched = twin_cores(peer_host="192.0.2.1", unthrottled=True)
    # BSM's UDP must come from its TCP peer's address
    assert one_by_one.receive_udp_fast(3, BSM, LTKM, b"x", 1.0, "192.0.2.7") is None
    assert one_by_one.receive_udp_fast(3, BSM, LTKM, b"y", 1.0, "192.0.2.1") is not None
    items = [(3, BSM, LTKM, b"y", "192.0.2.1"), (3, BSM, LTKM, b"x", "192.0.2.7"), (3, BSM, LTKM, b"z", "192.0.2.1")]
    outputs, taken = batched.receive_udp_batch(items, 1.0)
    assert taken == 1 and flatten(outputs) == [((BSM, LTKM), b"y")]
    assert batched.counters == one_by_one.counters


def test_runs_equal_item_by_item_and_stop_where_it_would_refuse():
    one_by_one, batched = twin_cores(peer_host="192.0.2.1", unthrottled=True)
    runs = [
        (3, BSM, LTKM, "192.0.2.1", [b"a1", b"a2", b"a3"]),
        (3, BSM, LTKM2, "192.0.2.1", [b"b1"]),
        (3, CARD, STKM_ID, None, [b"stkm-1", b"stkm-2"]),  # STKM: ingest datagram by datagram (the newest wins)
        (3, BSM, LTKM, "192.0.2.1", [b"a4", b"a5"]),
        (3, BSM, LTKM, "192.0.2.7", [b"x1", b"x2"]),  # not BSM's address: the runs stop here
        (3, BSM, LTKM, "192.0.2.1", [b"never"]),
    ]
    single = []
    for version, client, data_id, source, datagrams in runs[:4]:
        for datagram in datagrams:
            single += one_by_one.receive_udp_fast(version, client, data_id, datagram, 4.0, source)
    outputs, taken = batched.receive_udp_runs(runs, 4.0)
    assert taken == 4
    assert per_route(flatten(outputs)) == per_route(flatten(single))
    assert flatten(outputs)[:3] == [((BSM, LTKM), b"a1"), ((BSM, LTKM), b"a2"), ((BSM, LTKM), b"a3")]
    assert batched.counters == one_by_one.counters and batched.counters["udp_messages"] == 8
    for key in one_by_one.routes:
        assert batched.route_stats(key) == one_by_one.route_stats(key)
    assert per_route(flatten(batched.tick(4.0))) == per_route(flatten(one_by_one.tick(4.0)))


def test_classic_channel_datagrams_are_screened_in_a_batch_too():
    from tests.machines.test_mux_classic import TS_ID, make_core, setup, stream as classic_stream, ts_packets
    from tests.machines.test_mux_classic import CLASSIC

    cores = []
    for _ in range(2):
        core = make_core()
        conn = MuxConnection(core)
        one(setup(conn, flag=1), m.ChannelStatus)  # TS packets
        one(classic_stream(conn, TS_ID), m.StreamStatus)
        cores.append(core)
    one_by_one, batched = cores
    good, bad = ts_packets(2), b"\x00" * 188  # a TS packet must start with 0x47
    items = [(3, CLASSIC, TS_ID, good, None), (3, CLASSIC, TS_ID, bad, None), (3, CLASSIC, TS_ID, good, None)]
    single = []
    for *item, source in items:
        single += one_by_one.receive_udp_fast(*item, 1.0, source)
    outputs, taken = batched.receive_udp_batch(items, 1.0)
    assert taken == 3
    assert flatten(outputs) == flatten(single) == [((CLASSIC, TS_ID), good)] * 2
    assert dict(batched.dropped) == dict(one_by_one.dropped) and batched.dropped["bad_format"] == 1
    assert batched.counters == one_by_one.counters
