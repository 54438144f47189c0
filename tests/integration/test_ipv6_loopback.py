"""IPv6 literals end to end on ::1: EMMG -> MUX (TCP control and UDP data) -> an IPv6 destination.

The MUX listens on ``tcp:0:interface=\\:\\:1`` and ``udp:0:interface=\\:\\:1``; the EMMG is loaded
from a configuration file with ``connect = "tcp:host=\\:\\:1:port=N"`` and ``mux_udp = "[::1]:M"``;
the MUX's LTKM route goes to ``[::1]:P`` with ``ttl = 7``. Every spooled LTKM must arrive byte for
byte, each with hop limit 7 (``IPV6_RECVHOPLIMIT`` on the receiving socket).
"""

from __future__ import annotations

import socket
import struct
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bcast_sp4 import wire
from bcast_sp4.config.addresses import parse_udp_listen
from bcast_sp4.config.emmg import load_emmg_settings
from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxCore, RouteConfig, RouteKind
from bcast_sp4.roles.emmg_client import EMMGService
from bcast_sp4.roles.mux_server import MuxServer

BSM, DATA_ID, HOPS = 0x00010001, 0x0100, 7


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class IPv6LoopbackTests(TestCase):
    timeout = 40

    async def test_emmg_to_mux_to_an_ipv6_destination_over_ipv6_literals(self):
        receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.bind(("::1", 0))
        receiver.setblocking(False)
        receiver.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        got: list[tuple[bytes, int | None]] = []

        def drain() -> int:
            while True:
                try:
                    data, ancillary, _flags, _addr = receiver.recvmsg(65536, 64)
                except BlockingIOError:
                    return len(got)
                hops = next((struct.unpack("@i", v[:4])[0] for level, kind, v in ancillary
                             if (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)), None)
                got.append((data, hops))

        route = RouteConfig(kind=RouteKind.LTKM, data_id=DATA_ID, destination=("::1", receiver.getsockname()[1]),
                            ttl=HOPS, max_bandwidth=4000)
        core = MuxCore(MuxConfig(clients={BSM: ClientConfig(client_id=BSM, routes={DATA_ID: route})}))
        mux = MuxServer(core, reactor, interface="127.0.0.1", max_message_length=wire.MAX_MESSAGE_LENGTH, interface6="::1")
        mux.play_out.startService()
        self.addCleanup(mux.play_out.stopService)
        tcp = await serverFromString(reactor, "tcp:0:interface=\\:\\:1").listen(mux.factory)
        self.addCleanup(tcp.stopListening)
        udp_port, udp_interface = parse_udp_listen("udp:0:interface=\\:\\:1")
        udp = reactor.listenUDP(udp_port, mux.udp_protocol, interface=udp_interface)
        self.addCleanup(udp.stopListening)

        folder = Path(tempfile.mkdtemp(prefix="bcast-ipv6-"))
        spool = folder / "spool"
        spool.mkdir()
        ltkms = [bytes([k]) * (200 + k) for k in range(30)]
        for k, data in enumerate(ltkms):
            (spool / f"{k:03d}.ltkm").write_bytes(data)
        (folder / "emmg.toml").write_text(f"""
[emmg]
connect = "tcp:host=\\\\:\\\\:1:port={tcp.getHost().port}"
client_id = {BSM:#010x}
transport = "udp"
mux_udp = "[::1]:{udp.getHost().port}"
[[stream]]
data_stream_id = 1
data_id = {DATA_ID}
bandwidth = 2000
[stream.spool]
directory = "spool"
poll_interval_ms = 50
""")
        settings = load_emmg_settings(folder / "emmg.toml")
        self.assertEqual(settings.udp_interface, "::1")  # follows mux_udp's family
        emmg = EMMGService(settings, reactor)
        emmg.startService()
        await wait_for(lambda: drain() >= len(ltkms), 15.0, f"{len(ltkms)} LTKMs at [::1]")
        await emmg.stopService()
        self.assertEqual([d for d, _h in got], ltkms)
        self.assertEqual({h for _d, h in got}, {HOPS})
        self.assertEqual(core.counters["udp_messages"], len(ltkms))
        self.assertEqual(core.dropped, {})
        await wait_for(lambda: not mux.play_out.protocols, 5.0, "the EMMG connection to close")
