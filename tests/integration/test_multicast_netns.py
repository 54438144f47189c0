"""Real multicast: the MUX's play-out into a network namespace of its own, IPv4 and IPv6.

The test creates a network namespace and a veth pair (``ip netns``, ``ip link``; we run as root:
``scripts/bootstrap`` installs ``iproute2`` when ``ip`` is missing), gives both ends an IPv4 and an
IPv6 address, and runs, inside the namespace, a receiver that joins an IPv4 group (239.255.x.y)
and an IPv6 group (ff05::x) on its end and reads the TTL / hop limit of every datagram
(``IP_RECVTTL`` / ``IPV6_RECVHOPLIMIT``). The MUX (core + real play-out sockets, real reactor)
has four multicast routes -- LTKMs and STKMs, each to the IPv4 and to the IPv6 group -- leaving by
the host end of the veth (``[egress] interface`` / ``interface6`` / ``ipv6_multicast_interface``,
loaded from a configuration file). Every LTKM and every STKM must arrive, byte for byte, with the
configured TTL (3) and hop limit (5).

Not root: skipped. Root but the namespace cannot be made: the test fails. The namespace and the
veth pair are always removed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from bcast_sp4.config.mux import load_mux_settings
from bcast_sp4.machines.mux import MuxConnection, MuxCore
from bcast_sp4.roles.mux_server import MuxServer
from bcast_sp4.wire import emmg_mux as m

BSM = 0x00010001
TTL, HOPS = 3, 5

RECEIVER = r"""
import json, select, socket, struct, sys, time
group4, group6, port4, port6, ifname, expected, timeout = sys.argv[1:8]
port4, port6, expected, timeout = int(port4), int(port6), int(expected), float(timeout)
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s4.bind((group4, port4))
local4 = sys.argv[8]
s4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group4) + socket.inet_aton(local4))
s4.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVTTL", 12), 1)  # Linux <linux/in.h>: 12
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s6.bind(("::", port6))
index = socket.if_nametoindex(ifname)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(socket.AF_INET6, group6) + struct.pack("@I", index))
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
print("ready", flush=True)
seen = {4: {}, 6: {}}
deadline = time.monotonic() + timeout
while time.monotonic() < deadline and (len(seen[4]) < expected or len(seen[6]) < expected):
    ready, _, _ = select.select([s4, s6], [], [], 0.2)
    for s in ready:
        data, ancillary, _flags, addr = s.recvmsg(65536, 256)
        family = 4 if s is s4 else 6
        hops = None
        for level, kind, value in ancillary:
            if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)):
                hops = struct.unpack("@i", value[:4])[0] if len(value) >= 4 else value[0]
        seen[family].setdefault(data.hex(), set()).add(hops)
print(json.dumps({str(f): {k: sorted(v, key=str) for k, v in d.items()} for f, d in seen.items()}), flush=True)
"""


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class NetnsMulticastTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("needs root to create a network namespace")
        ip = shutil.which("ip")
        self.assertIsNotNone(ip, "iproute2 (ip) is missing: scripts/bootstrap installs it")
        tag = f"{os.getpid() % 100000}"
        self.ns, self.host_if, self.ns_if = f"bcast-mc-{tag}", f"bcmh{tag}", f"bcmn{tag}"
        octet = os.getpid() % 250 + 1
        self.host4, self.ns4 = f"10.253.{octet}.1", f"10.253.{octet}.2"
        self.host6, self.ns6 = f"fd00:bc:{octet:x}::1", f"fd00:bc:{octet:x}::2"
        self.addCleanup(self._remove_namespace)
        try:
            run("ip", "netns", "add", self.ns)
            run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            run("ip", "link", "set", self.ns_if, "netns", self.ns)
            run("ip", "addr", "add", f"{self.host4}/24", "dev", self.host_if)
            run("ip", "-6", "addr", "add", f"{self.host6}/64", "dev", self.host_if, "nodad")
            run("ip", "link", "set", self.host_if, "up")
            inside = ("ip", "netns", "exec", self.ns)
            run(*inside, "ip", "addr", "add", f"{self.ns4}/24", "dev", self.ns_if)
            run(*inside, "ip", "-6", "addr", "add", f"{self.ns6}/64", "dev", self.ns_if, "nodad")
            run(*inside, "ip", "link", "set", self.ns_if, "up")
            run(*inside, "ip", "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            self.fail(f"as root, could not create the namespace: {exc.cmd}: {exc.stderr.decode(errors='replace')}")

    def _remove_namespace(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)

    async def test_every_ltkm_and_stkm_reaches_the_ipv4_and_ipv6_groups_with_the_configured_ttl(self):
        group4, group6 = "239.255.43.59", "ff05::4359"
        port4, port6 = 14359, 14360
        folder = Path(tempfile.mkdtemp(prefix="bcast-netns-"))
        (folder / "mux.toml").write_text(f"""
[mux]
endpoint = "tcp:0:interface=127.0.0.1"
[egress]
interface = "{self.host4}"
interface6 = "{self.host6}"
ipv6_multicast_interface = "{self.host_if}"
[[client]]
client_id = {BSM:#010x}
[[client.ltkm]]
data_id = 0x0101
destination = "{group4}:{port4}"
ttl = {TTL}
max_bandwidth = 4000
default_bandwidth = 4000
[[client.ltkm]]
data_id = 0x0102
destination = "[{group6}]:{port6}"
ttl = {HOPS}
max_bandwidth = 4000
default_bandwidth = 4000
[[client.stkm]]
ecm_id = 1
destination = "{group4}:{port4 + 10}"
ttl = {TTL}
repetition_period = 50
[[client.stkm]]
ecm_id = 2
destination = "[{group6}]:{port6 + 10}"
ttl = {HOPS}
repetition_period = 50
""")
        settings = load_mux_settings(folder / "mux.toml")
        core = MuxCore(settings.mux)
        server = MuxServer(core, reactor, interface=settings.egress_interface, max_message_length=settings.max_message_length,
                           interface6=settings.egress_interface6, multicast_interface6=settings.ipv6_multicast_interface)
        server.play_out.startService()
        self.addCleanup(server.play_out.stopService)
        ltkms = [bytes([k]) * (100 + k) for k in range(1, 21)]
        stkms = [b"STKM" + bytes([k]) * 60 for k in range(1, 4)]
        receivers = []
        for stkm_offset in (0, 10):  # one receiver for the LTKM groups' ports, one for the STKM ones
            expected = len(ltkms) if stkm_offset == 0 else len(stkms)
            receivers.append(subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-c", RECEIVER, group4, group6,
                 str(port4 + stkm_offset), str(port6 + stkm_offset), self.ns_if, str(expected), "30", self.ns4],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for proc in receivers:
            self.addCleanup(lambda p=proc: p.poll() is None and (p.kill(), p.wait()))
            line = proc.stdout.readline()  # bounded: the receiver prints "ready" or exits
            self.assertEqual(line.strip(), "ready", proc.stderr.read() if proc.poll() is not None else line)
        # LTKMs: a data channel and two streams, as an LTKM generator sets them up (machine in-process)
        connection = MuxConnection(core)
        now = reactor.seconds()
        ids = {"client_id": BSM, "data_channel_id": 1}
        connection.receive(m.ChannelSetup(**ids, section_TSpkt_flag=2), now)
        for stream_id, data_id in ((1, 0x0101), (2, 0x0102)):
            connection.receive(m.StreamSetup(**ids, data_stream_id=stream_id, data_id=data_id, data_type=0), now)
        for ltkm in ltkms:
            for stream_id, data_id in ((1, 0x0101), (2, 0x0102)):
                server.play_out.execute(connection.receive(
                    m.DataProvision(**ids, data_stream_id=stream_id, data_id=data_id, datagram=(ltkm,)), reactor.seconds()))
            server.play_out.kick()
        # STKMs: the in-process path of a co-located SCS, one after the other
        for stkm in stkms:
            for ecm_id in (1, 2):
                server.submit_stkm(BSM, ecm_id, stkm)
            await deferLater(reactor, 0.2, lambda: None)  # a few repetitions of each on the air
        results = []
        for proc in receivers:
            while proc.poll() is None:  # bounded by the receiver's own 30 s
                await deferLater(reactor, 0.05, lambda: None)
            self.assertEqual(proc.returncode, 0, proc.stderr.read())
            results.append(json.loads(proc.stdout.read().strip().splitlines()[-1]))
        for (sent, result) in ((ltkms, results[0]), (stkms, results[1])):
            self.assertEqual(set(result["4"]), {d.hex() for d in sent})  # every one, byte for byte
            self.assertEqual(set(result["6"]), {d.hex() for d in sent})
            self.assertEqual({h for hops in result["4"].values() for h in hops}, {TTL})
            self.assertEqual({h for hops in result["6"].values() for h in hops}, {HOPS})
        self.assertEqual(core.dropped, {})
        connection.connection_lost(reactor.seconds())
