"""A peer's invalid message leaves no reference cycle behind (issue #13, control p99 under fuzz).

The decoder's exception for an invalid message is the item the machine answers. Kept with its
traceback it formed a cycle (exception -> traceback -> frames -> locals -> exception) per invalid
message, freed only by the cyclic GC: under a fuzz flood the young collections found ~15,000
objects a second and stopped the reactor for 5-17 ms each. Here the garbage collector is off: every
exception the machines saw must be freed by reference counting alone once the replies are written.
"""

from __future__ import annotations

import gc
import struct
import weakref

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bcast_sp4 import wire
from bcast_sp4.bcast.ecm import STKMSource
from bcast_sp4.bcast.ecm_request import CasMode
from bcast_sp4.config import load_keyfile
from bcast_sp4.machines.ecmg import ECMGConfig, ECMGResources
from bcast_sp4.roles.ecmg_server import ECMGFactory
from bcast_sp4.wire import PeerProtocolError
from bcast_sp4.wire import ecmg_scs as e
from bcast_sp4.wire import emmg_mux as m

from ..integration.harness import ROOT
from .test_mux_server import BSM, connect, make_server

DRM = 0x00010001
TLV = struct.Struct(">HH")


@pytest.fixture
def no_gc():
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def broken(valid: bytes) -> list[bytes]:
    """Invalid variants of *valid*: each one fault the decoder reports (and raises) differently."""
    head, body = valid[:5], valid[5:]
    version, kind, _length = struct.unpack(">BHH", head)

    def frame(v: int, k: int, b: bytes) -> bytes:
        return struct.pack(">BHH", v, k, len(b)) + b

    first_len = TLV.unpack_from(body)[1]
    return [
        frame(version, kind, body[:3]),  # cut inside a parameter header
        frame(version, kind, body[:2] + (first_len + 40).to_bytes(2, "big") + body[4:]),  # overrun
        frame(version, kind, body + body[: 4 + first_len]),  # first parameter repeated
        frame(version, kind, TLV.pack(0x0FFF, 1) + b"\x00" + body),  # unknown parameter
        frame(version, kind, body[:2] + (first_len + 1).to_bytes(2, "big") + body[4:4 + first_len] + b"\x00"
              + body[4 + first_len:]),  # wrong fixed length
        frame(version, 0x0F0F, body),  # unknown message type
        frame(0x7F, kind, body),  # unknown version
    ]


def spy(target, name: str, seen: list) -> None:
    original = getattr(target, name)

    def record(item, *args):
        if isinstance(item, PeerProtocolError):
            seen.append(weakref.ref(item))
        return original(item, *args)

    setattr(target, name, record)


def test_ecmg_invalid_messages_are_freed_without_the_cyclic_gc(no_gc):
    clock = Clock()
    clock.advance(1_750_000_000)
    resources = ECMGResources(ECMGConfig(cas_modes={DRM: CasMode.DRM_PROFILE}))
    keys = load_keyfile(ROOT / "etc" / "keys.example.toml")
    factory = ECMGFactory(resources, STKMSource(keys, {DRM: CasMode.DRM_PROFILE}), clock, 4096)
    seen: list[weakref.ref] = []
    bad = broken(e.StreamSetup(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=20).encode())
    for data in bad:  # a connection each: repeated errors close a channel
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(e.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode())
        spy(protocol, "handle", seen)
        protocol.dataReceived(data)
        kinds = [wire.decode(f, wire.Interface.ECMG_SCS) for f in wire.Framer().feed(transport.value())]
        assert type(kinds[-1]) in (e.ChannelError, e.StreamError)  # answered with an error
        protocol.connectionLost(None)
        del protocol, transport, kinds
    assert len(seen) == len(bad)
    assert [ref for ref in seen if ref() is not None] == []


def test_mux_invalid_messages_over_tcp_and_udp_are_freed_without_the_cyclic_gc(no_gc):
    _reactor, server = make_server()
    seen: list[weakref.ref] = []
    setup = m.StreamSetup(client_id=BSM, data_channel_id=1, data_stream_id=1, data_id=0x100, data_type=0).encode()
    bad = broken(setup)
    for data in bad:
        protocol, transport = connect(server)
        protocol.dataReceived(m.ChannelSetup(client_id=BSM, data_channel_id=1, section_TSpkt_flag=0).encode())
        spy(protocol, "handle", seen)
        protocol.dataReceived(data)
        kinds = [wire.decode(f, wire.Interface.EMMG_MUX) for f in wire.Framer().feed(transport.value())]
        assert type(kinds[-1]) in (m.ChannelError, m.StreamError)
        protocol.connectionLost(None)
        del protocol, transport, kinds
    assert len(seen) == len(bad)
    udp = server.udp_protocol
    datagrams = broken(m.DataProvision(client_id=BSM, data_id=0x100, datagram=(b"payload",)).encode())
    addr = ("127.0.0.1", 40000)
    spy(udp.core, "receive_udp", seen)
    udp.datagramsReceived([(d, addr) for d in datagrams])
    for d in datagrams:
        udp.datagramReceived(d, addr)
    assert len(seen) == len(bad) + 2 * len(datagrams)
    assert [ref for ref in seen if ref() is not None] == []
